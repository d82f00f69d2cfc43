//! Weft access policy: HuJSON parsing and validation, compilation per node, evaluation and explanation (pure)
