"""sonodistill.evaluation"""
