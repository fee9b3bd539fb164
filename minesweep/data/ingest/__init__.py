"""Stage 2, recordings into a store: contractor recordings (``contractor``), MineStudio's LMDB datasets
(``minestudio``) and videos without actions labelled by an inverse dynamics model (``label``); frames resized on the
way (``resize``), the GUI cursor drawn (``cursor``), bad input reported by file and step (``pipeline``: what they
share)."""
