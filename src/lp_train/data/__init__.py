"""lp_train.data"""
