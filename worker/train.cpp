// placeholder (issue 6)
