"""The model: loading and saving, chunked log-probs, prefix sharing, LoRA and speed levers."""
