"""sonodistill.recipes"""
