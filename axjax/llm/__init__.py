"""LLM clients shared by the judges, the prompt writers and the data generator."""
