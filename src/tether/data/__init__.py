"""Reading data: sources (files, datasets, the Hub), records, tokenization and batching."""
