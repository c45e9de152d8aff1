"""The TF-free core every part of mstl shares: artifact formats and runtimes, model cards, the run
directory's files, image decoding and file lists, preprocessing, the decision rule, metrics."""
