"""CLIP tokenizer, prompt templates, class names with synonyms, and the text classifier."""
