"""sonodistill.serve"""
