"""sonodistill.commands"""
