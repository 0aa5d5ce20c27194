"""A pre-training corpus: text files of documents (one sentence per line, a blank line
between documents) read as a stream of byte-range slices (`documents`), the packed TFRecords
`berth-trainer prepare` writes from them (`records`, `prepare`), and Google BERT's masked
TFRecords (`google`).
"""
