"""The compression API: quantize, prune, low_rank, distill, save/load."""
