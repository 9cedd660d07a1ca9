"""Reports: rendering of what runs recorded (the `synthmed compare` page; later utility, bias and reader-study pages).

The top library layer: reads through tracking, renders Markdown/HTML/JSON; nothing below imports it.
"""
