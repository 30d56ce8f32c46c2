"""git adapter: resolve refs, export a clean tree, count and list commits, read identity."""
