"""lp_train.lit"""
