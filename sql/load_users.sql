-- Add the good user rows of one file that are not known yet.
insert into users
with good as (
    select * from checked where bad_field is null
    qualify row_number() over (partition by p_key order by _row) = 1
)

select p_key, p_created_at, $source_file
from good
where not exists (select 1 from users u where u.user_id = good.p_key)
