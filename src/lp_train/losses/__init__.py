"""lp_train.losses"""
