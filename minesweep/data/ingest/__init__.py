"""Stage 2, recordings into a store: contractor recordings (``contractor``) and MineStudio's LMDB datasets
(``minestudio``), frames resized on the way (``resize``), bad input reported by file and step."""
