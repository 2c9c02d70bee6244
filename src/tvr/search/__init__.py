"""Search the user's own videos with a trained (or zero-shot) model: ``tvr-index`` and ``tvr-search``."""
