"""cnnlab's config: its typed schema, composition, the settings that decide a trained model (and the run key
made of them), and the Keras backend switch."""
