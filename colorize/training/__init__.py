"""Training: curated pairs in, a better model (maybe) out."""
