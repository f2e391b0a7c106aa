SET search_path TO toygres_actors
