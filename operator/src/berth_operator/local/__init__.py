"""`berth run`: a BertTraining manifest trained by local worker processes, no cluster needed."""
