"""Drop-in ``torch.nn`` modules backed by llmkern's ops."""
