"""Bringing models made elsewhere: read what a .tflite says about itself."""
