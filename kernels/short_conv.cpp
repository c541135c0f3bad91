// placeholder: implementation lands in this commit series
