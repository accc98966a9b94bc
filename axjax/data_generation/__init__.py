"""AxBench's `generate` stage: concept data (train and latent-eval parquet files) written by an LLM."""
