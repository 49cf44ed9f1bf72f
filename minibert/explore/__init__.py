"""Looking inside a trained model: the inspection commands, and the callbacks that show it during training.

Nothing here changes how the model learns. Read it after the lesson (``minibert/model.py`` and
``module.py``), in this order:

- ``commands.py``: start here. What ``lightning export``, ``neighbors``, ``fill-mask``,
  ``attention``, ``contexts`` and ``evaluate`` do, each a short function calling the files below;
  their options are in ``arguments.py``.
- ``checkpoint.py``: a checkpoint's model and vocabulary, all that the commands read.
- ``embeddings.py``: which word vectors to look at, input or output, of which words.
- ``neighbours.py``: nearest neighbours by cosine similarity, the one search used by
  ``neighbors``, words in context, purity@k and analogies.
- ``fill_mask.py``: the likeliest words at each ``<mask>``, the task the model learned.
- ``internals.py``: one forward pass watched by hooks: every layer's output and attention weights.
- ``attention.py``: those weights drawn as a grid of maps, a layer a row, a head a column.
- ``contexts.py``: a vector for each occurrence of a word, in its sentence.
- ``evaluation.py``: purity@k on word groups, accuracy on word analogies.
- ``word_map.py``: the word vectors drawn in two dimensions (PCA).
- ``projector.py``: the files TensorBoard's Embedding Projector reads, and how runs list them.
- ``callbacks.py``: the same views during training: projector files every epoch, attention
  images and embedding scores at each validation.

Skippable on a first read: ``arguments.py`` (argparse), ``figures.py`` (matplotlib as an optional
extra), ``attention_page.py`` (the HTML page of ``attention --html``), ``word2vec.py`` (the file
format gensim reads).
"""
