"""Task data: loaders with clear errors, and embedded defaults that need no download."""
