"""The image modality: models, image loading, capture, the matching problem and scoring."""
