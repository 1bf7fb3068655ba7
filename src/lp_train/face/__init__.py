"""Faces in images: detection + 478-point mesh (``detect``), the LivePortrait crop (``crop``), the one landmark
index table and the quantities derived from it (``landmarks``), and tracking a face through a clip (``track``).

Plain numpy / OpenCV / mediapipe code with no training framework in it; curation (``data_prep``), the training
loader, losses, metrics, inference and evaluation all take their face conventions from here.
"""
