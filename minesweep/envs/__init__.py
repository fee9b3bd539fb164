"""Games that run here, in the loop of training and evaluation: Crafter as a Minecraft stand-in.

``crafter``: the adapter and the Crafter <-> contractor action mapping; ``crafter_player``: scripted and random
players; ``crafter_record``: episodes written as contractor recordings.
"""
