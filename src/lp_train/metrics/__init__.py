"""lp_train.metrics"""
