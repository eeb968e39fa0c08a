"""sonodistill.models"""
