"""Frozen third-party networks that supervise or measure LivePortrait but are not part of it: ArcFace (identity
loss, CSIM), Hopenet (head-pose teacher of L_H) and the small landmark regressor of stage 2 (distilled from the
face mesh). Plain ``nn.Module``s, loaded from local weight files; LivePortrait's own networks are in ``models``.
"""
