"""The generated shapes world and the pretraining of the small default backbone on it.

render.py (scenes drawn with PIL), language.py (what texts claim and how they are
phrased), world.py (scenes, sibling pairs, task files), pretrain.py (streamed
pretraining through training.loop), probe.py (what a backbone knows of the world).
"""
