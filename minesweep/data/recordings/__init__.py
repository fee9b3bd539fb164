"""Stage 1, making recordings: contractor recordings (``.mp4`` + ``.jsonl``) of a synthetic world (``synth``).
Crafter games are recorded by ``minesweep.envs.crafter_record``; people's recordings come from elsewhere."""
