"""minibert: a BERT-style masked language model for French, from scratch, trained with Lightning."""

__version__ = "0.1.0"
