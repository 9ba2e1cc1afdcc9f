"""Using a trained model: `evaluate` (loss on a token array), `generate` (sampling) and `export_hf`
(a Hugging Face `transformers` folder)."""
