"""SpeechCT training: synthesis of CT-RATE/Speech-RATE-like data, training, evaluation.

Imports ``engine`` (models, preprocessing, audio features, findings); never the reverse.
"""
