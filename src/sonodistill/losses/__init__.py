"""sonodistill.losses"""
