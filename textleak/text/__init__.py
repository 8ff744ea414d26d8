"""Text modality: HF model loading, tokenisation and masking, dummy embeddings, decoding."""
