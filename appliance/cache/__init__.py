"""The shared cache engine: apt files and cloud images flow through the same store."""
