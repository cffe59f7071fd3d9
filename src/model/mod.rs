//! Llama model, loading and tokenizer (filled in by the model work).
