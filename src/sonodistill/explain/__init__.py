"""sonodistill.explain"""
