"""sonodistill.data"""
