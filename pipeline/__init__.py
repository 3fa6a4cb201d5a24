"""fdkd pipeline: everything that produces the deployable student.

Stages (each a function from files on disk to files on disk): data -> teacher -> distill.
Importing this package is cheap: torch and friends are imported inside the stages.
"""
