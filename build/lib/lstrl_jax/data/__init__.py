"""Video ReID datasets (readers producing one common index) and the grain input pipeline."""
