"""fdkd serving: what ships to the device (runtimes, preprocessing, HTTP app).

Never imports torch or ``pipeline``: the serving image has neither.
"""
