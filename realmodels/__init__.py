"""Pretrained language models through Hugging Face transformers: adapters, data, LM measurements."""
